"""The pipeline: detect changes on each replica, reconcile each item, propagate the plan."""
