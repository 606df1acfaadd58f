"""Capture: from a dump's memory view to a written dump.

- :mod:`.pipeline` batches of pages: zero test, compression on threads, one in-order writer
- :mod:`.targets`  where the bytes go (a local file written as ``.incomplete`` then renamed,
  or a flattened stream) and how a failed dump is marked
- :mod:`.progress` the progress bar / serial-console lines
"""
