"""HTTP layer: the app factory, thin routers, serving classes and error handling."""
