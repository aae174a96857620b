"""The live explorer in the browser (``deconvnet serve``).

``compute`` holds what it computes, ``app`` the web application and its JSON API, ``static``
the page.
"""
