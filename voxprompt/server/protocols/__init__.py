"""Protocol adapters: thin layers over the public :class:`~voxprompt.session.Session` API."""
