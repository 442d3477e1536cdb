"""Import first in any module that runs Locust: Locust monkey-patches the process for gevent when
it is imported. Inside the CLI this happens late (other commands' modules are already loaded): ssl
is never used for the ws:// loopback and remote targets' sockets are created after the patch, so
gevent's late-patching warning is silenced."""
import warnings

warnings.filterwarnings("ignore", message=".*Monkey-patching.*")

import locust  # noqa: E402,F401  (the patch)
