from django.urls import include, path
from orders import views

urlpatterns = [
    path("orders/<int:pk>/", views.order, name="order"),
    path("orders/<int:pk>/checkout/", views.checkout, name="checkout"),
    path("orders/<int:pk>/paid/", views.paid, name="paid"),
    path("athm/", include("athm_sync.urls")),
]
