"""Private helpers shared by several domains: argument checks (``checks``), tree
utilities (``trees``), overflow-safe norms (``norms``), sharding helpers
(``sharding``), parameter paths (``paths``), solver statuses (``status``) and the
jaxpr evaluator (``jaxpr``). Domains import these, never each other's private
modules; nothing here imports a domain."""
