"""The op graph and its tensor back end (see ``symgrad/graph/ir.py`` for the core node kinds)."""

from .check import check_graph
from .interpret import register
from .ir import Graph, Node

__all__ = ["check_graph", "register", "Graph", "Node"]
