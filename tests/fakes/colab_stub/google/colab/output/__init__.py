"""Stand-in for ``google.colab.output``: the custom widget manager switch, recording who calls it."""

from ._widgets import disable_custom_widget_manager, enable_custom_widget_manager, events

__all__ = ["disable_custom_widget_manager", "enable_custom_widget_manager", "events"]
