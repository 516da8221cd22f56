"""URLs of the support desk."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "support"

urlpatterns = [
    path("", views.ticket_list, name="tickets"),
    path("tickets/<int:pk>/", views.ticket_detail, name="ticket"),
    path("tickets/<int:pk>/summarize/", views.summarize_ticket, name="summarize"),
    path("tickets/<int:pk>/classify/", views.classify_ticket, name="classify"),
    path("tickets/<int:pk>/legal-review/", views.legal_review, name="legal-review"),
    path("tickets/<int:pk>/draft-reply/", views.draft_reply, name="draft-reply"),
]
