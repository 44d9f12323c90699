"""Signed bundles (models, config overlays, fleet priors) from the cloud, through TUF, into A/B
slots, applied live, soaked, reported and reverted on failure.

Modules: `settings` (``[updates]``), `overlay` (what a remote overlay may change), `bundle`
(the archive format and its checks), `slots` (A/B slots and the state file), `fetch` (TUF),
`boot` (what a start runs), `manager` (the poll/apply/soak/report/revert task), `wiring`.
"""
