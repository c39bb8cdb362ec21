from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.views.decorators.http import require_safe


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    """Signed-in traders land on their portfolio; visitors on the market list."""
    target = "web:portfolio" if request.user.is_authenticated else "web:markets"
    return HttpResponseRedirect(reverse(target))
