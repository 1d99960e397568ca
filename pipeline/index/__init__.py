"""Indexes: parameter planning, one class per variant kind, FAISS helpers and compact representations."""
