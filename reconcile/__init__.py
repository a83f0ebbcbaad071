"""reconcile: prove the new store holds what the old one says it should.

The comparison, drift reports, repair and readiness evaluation land here (issues 6 and 7).
"""

__all__: list[str] = []
