/* Sluice in-process from C: a chat completion, then the same streamed.
 *
 *   cc examples/c/chat.c -Iinclude -Ltarget/debug -lsluice -o chat
 *   LD_LIBRARY_PATH=target/debug ./chat [config.toml] [model] [prompt]
 *
 * With no configuration it runs the embedded default (a mock model). Exits
 * non-zero when a call fails. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sluice.h"

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)n + 1);
  if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  if (buf) {
    buf[n] = '\0';
    *len = (size_t)n;
  }
  return buf;
}

struct stream_state {
  int chunks;
  int stop_after; /* cancel after this many chunks; 0: never */
};

static int32_t on_chunk(const char *chunk, size_t len, void *user_data) {
  struct stream_state *s = user_data;
  s->chunks++;
  printf("chunk %d (%zu bytes): %s\n", s->chunks, len, chunk);
  return s->stop_after && s->chunks >= s->stop_after;
}

int main(int argc, char **argv) {
  const char *model = argc > 2 ? argv[2] : "mock-1";
  const char *prompt = argc > 3 ? argv[3] : "Hello from C!";
  char *config = NULL;
  size_t config_len = 0;
  if (argc > 1 && strcmp(argv[1], "-") != 0) {
    config = read_file(argv[1], &config_len);
    if (!config) {
      fprintf(stderr, "cannot read %s\n", argv[1]);
      return 2;
    }
  }
  printf("sluice %s (ABI %d)\n", sluice_version(), SLUICE_ABI_VERSION);

  char *err = NULL;
  SluiceGateway *gw = sluice_gateway_new(config, config_len, &err);
  free(config);
  if (!gw) {
    fprintf(stderr, "configuration refused:\n%s\n", err);
    sluice_string_free(err);
    return 1;
  }

  char request[1024];
  snprintf(request, sizeof request,
           "{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]}",
           model, prompt);

  /* One answer, whole. */
  char *result = NULL;
  int32_t status = sluice_chat(gw, request, strlen(request), &result);
  printf("chat: status %d\n%s\n", status, result ? result : "(none)");
  int failed = status != 200;
  sluice_string_free(result);

  /* The same, streamed: one callback per chunk. */
  struct stream_state all = {0, 0};
  status = sluice_chat_stream(gw, request, strlen(request), on_chunk, &all);
  printf("stream: status %d, %d chunks\n", status, all.chunks);
  failed |= status != 200 || all.chunks < 2;

  /* Cancelled from the callback after the first chunk. */
  struct stream_state one = {0, 1};
  status = sluice_chat_stream(gw, request, strlen(request), on_chunk, &one);
  printf("cancelled: status %d, %d chunks\n", status, one.chunks);
  failed |= status != SLUICE_CANCELLED || one.chunks != 1;

  /* An error comes back with the status it would have had over HTTP. */
  const char *bad = "{\"model\":\"no-such-model\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
  status = sluice_chat(gw, bad, strlen(bad), &result);
  printf("unknown model: status %d\n%s\n", status, result ? result : "(none)");
  failed |= status != 404;
  sluice_string_free(result);

  /* Null pointers are refused, not dereferenced. */
  status = sluice_chat(NULL, request, strlen(request), &result);
  printf("null gateway: status %d (%s)\n", status, sluice_last_error());
  failed |= status != SLUICE_ERR_NULL;

  sluice_gateway_free(gw);
  printf(failed ? "FAILED\n" : "ok\n");
  return failed;
}
