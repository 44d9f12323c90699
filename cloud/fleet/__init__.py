"""Fleet rollouts: the rollout state in the database (`store`), its scheduler (`scheduler`) and
the API (`handlers`); the signed bundles themselves come from `cloud.release` and are served by
`cloud.updates`."""
