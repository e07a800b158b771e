"""URLs of the minimal Django example: one page."""

from django.urls import path

from . import views

urlpatterns = [path("", views.hello)]
