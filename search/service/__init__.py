"""The search service: a REST API (FastAPI) over a persistent job queue whose jobs are CLI searches.

``store`` keeps the jobs (SQLAlchemy: SQLite by default, any URL otherwise), ``scheduler`` runs them as
worker processes and survives restarts, ``app`` is the HTTP face (auth, validation, limits).
"""
