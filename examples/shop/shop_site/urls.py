from django.urls import include, path
from orders import views

urlpatterns = [
    path("orders/<int:pk>/paying/", views.paying, name="paying"),
    path("athm/", include("athm_sync.urls")),
]
