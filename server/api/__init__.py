"""HTTP and WebSocket routes: fal's sync run, queue, realtime and storage APIs, ``/ws``, tokens, files,
the OpenAPI document. A route module parses the request, calls the layers below and shapes the answer;
it keeps no state of its own (``state`` names what ``create_app`` put on the app). Route modules may
import every layer below; nothing below imports them.
"""
