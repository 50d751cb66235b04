"""The API's description: the `@operation` decorator each route carries, and the OpenAPI document and docs page
built from them."""
