from django.urls import include, path
from orders import views

urlpatterns = [
    path("orders/<int:pk>/checkout/", views.checkout, name="checkout"),
    path("orders/<int:pk>/paid/", views.paid, name="paid"),
    path("orders/<int:pk>/paying/", views.paying, name="paying"),
    path("athm/", include("athm_sync.urls")),
]
