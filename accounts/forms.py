"""Forms of the sign-in pages."""

from __future__ import annotations

from django import forms


class LoginLinkForm(forms.Form):
    email = forms.EmailField(
        max_length=320,
        label="Email",
        error_messages={
            "required": "Enter your email address.",
            "invalid": "Enter a valid email address, like you@example.com.",
        },
        widget=forms.EmailInput(
            attrs={"autocomplete": "email", "autofocus": True, "placeholder": "you@example.com"}
        ),
    )
