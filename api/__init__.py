"""The HTTP surface: the Flex webhook endpoint, the read API and the operations routes.

The web framework (litestar) is used only inside this package.
"""
