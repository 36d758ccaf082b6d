"""The rootless Podman host and runner image, as prepared by ./dev setup."""
