# Sourced by scripts/test and scripts/demo: installs what deployctl's demo and tests need
# (Debian packages, cargo-nextest) and checks that the Docker engine answers.
# shellcheck shell=bash

say() { printf "%s: %s\n" "$(basename "$0")" "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        say "need root (or sudo) to run: $*"
        exit 1
    fi
}

# Debian package -> a check that it is installed.
missing=()
need() {
    local package=$1
    shift
    if ! "$@" >/dev/null 2>&1; then
        case " ${missing[*]-} " in *" $package "*) ;; *) missing+=("$package") ;; esac
    fi
}
need docker.io command -v docker
need docker-registry command -v docker-registry
need openssh-server test -x /usr/sbin/sshd
for tool in ssh ssh-keygen ssh-agent ssh-add; do
    need openssh-client command -v "$tool"
done
need docker-compose command -v docker-compose
# The reverse proxy of the zero-downtime tests. Where systemd runs, the package also starts a
# caddy.service on :80 and :2019; the tests use neither (their Caddy listens on free ports).
need caddy command -v caddy
# `deployctl setup`'s test: the unit it installs is checked by `systemd-analyze verify`, and its
# bare host is assembled from this machine's useradd (passwd) and setpriv (util-linux).
need systemd command -v systemd-analyze
need passwd test -x /usr/sbin/useradd
need util-linux test -x /usr/bin/setpriv
# ... and a cloud-shaped bare host, where setup goes through the real sudo.
need sudo test -x /usr/bin/sudo
# `deployctl doctor`'s test puts an agent's clock off with libfaketime.
need faketime test -f /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1
# `status --watch` is tested in a real terminal (tmux), `deployctl ui` in headless Chromium.
need tmux command -v tmux
need chromium command -v chromium
# The agent's metrics and sample alert rules are checked with promtool, which Debian ships only
# in the full `prometheus` package (no smaller one has it). Where systemd runs, the package also
# starts a prometheus.service on :9090; the tests do not use it. Without systemd (containers)
# invoke-rc.d declines to start it and the install goes on.
need prometheus command -v promtool
# The harness signals the processes it starts with kill(1).
need procps test -x /usr/bin/kill
# The registry-auth tests: a bcrypt htpasswd for an authenticating registry, and a private CA
# with a server certificate for a TLS one.
need apache2-utils command -v htpasswd
need openssl command -v openssl
# `deployctl completions` is checked by each shell's own parser (and bash completes with it),
# `deployctl man --dir` by groff with every warning on.
need zsh command -v zsh
need fish command -v fish
need groff-base command -v groff
# Static glibc for the demo app's crt-static build.
need libc6-dev test -f /usr/lib/x86_64-linux-gnu/libc.a

if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Caddy replaces its listeners at every config change; unless the kernel hands the connections
# queued on a closing listener to its successor, it resets them, and a route switch drops requests.
if [ "$(cat /proc/sys/net/ipv4/tcp_migrate_req 2>/dev/null)" != 1 ]; then
    say "setting net.ipv4.tcp_migrate_req=1 (Caddy resets queued connections at each config change otherwise)"
    as_root sysctl -q -w net.ipv4.tcp_migrate_req=1
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    say "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

if ! answer=$(timeout 30 docker version --format '{{.Server.Version}}' 2>&1); then
    say "the Docker engine does not answer: ${answer//$'\n'/ }"
    say "fix: start it (sudo systemctl start docker, or sudo dockerd & where there is no systemd)"
    say "     and let $(id -un) use /var/run/docker.sock (run as root, or join the docker group)"
    exit 1
fi
say "Docker engine ${answer} answers"
