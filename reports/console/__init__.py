"""The review console: a small server-rendered ASGI app for DSLs, IT staff and teachers.

`app.create_app` builds it; `schoolgate console` serves it with uvicorn. See reports/README.md.
"""
