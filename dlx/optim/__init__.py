"""What tasks build their states from: Optax chains and schedules from a config group
(`optimizer`), regex rules over parameter paths (`rules`), and the one-model state with its
gradient step (`state`)."""
