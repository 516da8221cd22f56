"""The support desk's data: customer tickets."""

from __future__ import annotations

from django.db import models


class Ticket(models.Model):
    """A customer's request to the support team."""

    class Status(models.TextChoices):
        OPEN = "open", "open"
        PENDING = "pending", "waiting on customer"
        CLOSED = "closed", "closed"

    subject = models.CharField(max_length=200)
    body = models.TextField()
    customer = models.CharField(max_length=120)
    customer_email = models.EmailField(blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at", "-pk")

    def __str__(self) -> str:
        return f"#{self.pk} {self.subject}"
