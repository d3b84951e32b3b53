"""Image collections cnnviz_fast can generate itself (no download): `synthetic` for the demo."""
