"""Example workflows shipped with framebag; copy one to start your own."""
