#!/bin/bash
# The browser stack, one service: Xvnc, a window manager, Chromium and
# websockify/noVNC in this process group. When any of them exits the script
# exits, so the agent's restart policy restarts the whole stack and a stop
# (a signal to the group) ends all of it.
#
# Xvnc listens on loopback only (-localhost, no X over TCP): only websockify,
# in the same sandbox, reaches it; the edge's login guards the noVNC page.
#
# Chromium runs with --no-sandbox: its own sandbox needs user namespaces (or
# a setuid helper), which the container runtime's seccomp profile denies, so
# Chromium would not start at all. The sandbox itself (runc or a microVM) is
# the isolation boundary for what the browser renders.
set -u
display=:1
rfb=5901
geometry=${ATELIER_BROWSER_GEOMETRY:-1280x800}
mkdir -p "$HOME/.config/chromium"
Xvnc "$display" -localhost -nolisten tcp -rfbport "$rfb" -SecurityTypes None \
	-geometry "$geometry" -depth 24 -AlwaysShared &
for _ in $(seq 100); do
	[ -e /tmp/.X11-unix/X1 ] && break
	sleep 0.05
done
export DISPLAY=$display
openbox &
chromium --no-sandbox --disable-dev-shm-usage --no-first-run --no-default-browser-check \
	--disable-gpu --password-store=basic --user-data-dir="$HOME/.config/chromium" \
	--start-maximized "${ATELIER_BROWSER_URL:-about:blank}" &
websockify --web /usr/share/novnc "0.0.0.0:${PORT}" "127.0.0.1:$rfb" &
wait -n
exit 1
