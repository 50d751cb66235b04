"""How the app speaks HTTP around its routes: request bodies, the JSON provider, CORS, the headers and limits every
request and response gets, and the public health routes."""
