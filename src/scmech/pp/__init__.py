"""scmech.pp."""
