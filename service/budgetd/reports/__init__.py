"""Reports: aggregates kept by a ledger follower, and the queries over them."""
