"""Small shared helpers: atomic files, devices, progress bars, seeding."""
