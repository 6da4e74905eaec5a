# The demo app's image, one per version: FROM scratch around the static binary, which is also
# its own HEALTHCHECK (scratch has no shell or curl). demokit (src/images.rs) fills in
# the @…@ placeholders per version and runs `docker build` with the binary beside this file in
# the build context as `demoapp`. The binary sits at /app so `command = ["/app", "migrate"]`
# works as in DESIGN.md; SIGTERM (the default stop signal) makes it exit at once.
FROM scratch
COPY demoapp /app
ENV DEMO_VERSION=@VERSION@ DEMO_MODE=@MODE@ DEMO_MIGRATE_FAIL=@MIGRATE_FAIL@ DEMO_PORT=8080 DEMO_MIGRATION_FILE=/data/migrations.log
LABEL org.opencontainers.image.version=@VERSION@ org.opencontainers.image.revision=@GIT_SHA@
EXPOSE 8080
HEALTHCHECK --interval=1s --timeout=1s --retries=2 CMD ["/app", "healthcheck"]
CMD ["/app", "serve"]
