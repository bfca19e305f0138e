"""The admin edge: the API, its auth, the dashboard, events and status rendering.

Owns: the admin port. Does not: mutate scheduler state except through typed messages.
"""
