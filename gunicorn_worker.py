"""gunicorn's threaded worker, with a shutdown that drops no request a client has sent.

On SIGTERM the stock worker stops accepting but keeps its listening socket open
until it exits, so the kernel keeps completing new connections into the
socket's backlog; clients send their requests on them, and when the worker
finally exits those connections are reset, requests unread. Here a stopping
worker first accepts whatever is already waiting (those requests are served,
with `Connection: close`) and then closes its listening socket at once, so a
client that connects afterwards is refused before it sends anything and can
safely retry elsewhere.
"""

import errno

from gunicorn.workers.gthread import TConn, ThreadWorker


class DrainingThreadWorker(ThreadWorker):
    def set_accept_enabled(self, enabled):
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            self._accept_backlog_and_close()

    def _accept_backlog_and_close(self):
        for listener in self.sockets:
            while True:
                try:
                    client_sock, client_addr = listener.accept()
                except OSError as error:
                    if error.errno == errno.ECONNABORTED:
                        continue  # that client gave up; look for the next
                    break  # EAGAIN: the backlog is empty
                self.nr_conns += 1
                client_sock.setblocking(True)
                self.enqueue_req(TConn(self.cfg, client_sock, client_addr, listener.getsockname()))
            listener.close()
