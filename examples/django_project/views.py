"""The one view of the Django example: edit the text or the template, then reload the page."""

import os

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def hello(request: HttpRequest) -> HttpResponse:
    return render(request, "hello.html", {"message": "Hello from Django", "pid": os.getpid()})
