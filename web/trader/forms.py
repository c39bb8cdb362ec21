"""Forms of the trader pages."""

from __future__ import annotations

from django import forms


class ApiKeyCreateForm(forms.Form):
    label = forms.CharField(
        max_length=100,
        required=False,
        strip=True,
        label="Label",
        help_text="What the key is for, e.g. “market-maker bot”. Optional.",
        error_messages={"max_length": "Keep the label to 100 characters or fewer."},
    )
