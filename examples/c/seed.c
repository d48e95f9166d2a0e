/* The seed workload from C: N random arrays of M floats, summed where they
 * live, then the sums summed. Also moves a C-owned array into the cluster
 * without a copy and reads a chunk back through the Arrow C Data Interface.
 *
 *   cc examples/c/seed.c -I ffi/include -L target/release -lquiver_ffi -o seed
 *   ./seed [--arrays N] [--size M] [--workers W] [--scheduler HOST:PORT]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quiver.h"

static int check(QuiverStatus status, const char *what) {
  if (status == QUIVER_OK) return 0;
  const char *msg = quiver_last_error();
  fprintf(stderr, "seed: %s failed (status %d): %s\n", what, (int)status, msg ? msg : "?");
  return 1;
}

#define CHECK(call, what)        \
  do {                           \
    if (check((call), (what))) { \
      rc = 1;                    \
      goto done;                 \
    }                            \
  } while (0)

/* A C-owned float64 array for quiver_scatter: the library calls release when
 * the cluster lets go of the buffers. */
static int released = 0;

static void release_doubles(struct ArrowArray *array) {
  free((void *)array->buffers[1]);
  free(array->buffers);
  array->release = NULL;
  released++;
}

static void release_schema(struct ArrowSchema *schema) { schema->release = NULL; }

int main(int argc, char **argv) {
  long arrays = 100, size = 1000000, workers = 4;
  const char *scheduler = NULL;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--arrays")) arrays = atol(argv[i + 1]);
    else if (!strcmp(argv[i], "--size")) size = atol(argv[i + 1]);
    else if (!strcmp(argv[i], "--workers")) workers = atol(argv[i + 1]);
    else if (!strcmp(argv[i], "--scheduler")) scheduler = argv[i + 1];
    else {
      fprintf(stderr, "usage: seed [--arrays N] [--size M] [--workers W] [--scheduler HOST:PORT]\n");
      return 2;
    }
  }
  if (arrays < 1 || size < 1) {
    fprintf(stderr, "seed: --arrays and --size must be positive\n");
    return 2;
  }

  int rc = 0;
  QuiverClient *client = NULL;
  QuiverGraph *graph = NULL;
  char **sums = calloc((size_t)arrays, sizeof(char *));
  double *values = NULL;
  printf("quiver %s\n", quiver_version());

  if (scheduler) CHECK(quiver_connect(scheduler, &client), "connect");
  else CHECK(quiver_local((uint32_t)workers, 0, &client), "local");

  /* The seed graph: x-i = random(M, seed=i), sum-i = sum(x-i), total = sum([sum-i...]). */
  graph = quiver_graph_new();
  for (long i = 0; i < arrays; i++) {
    char key[32], task[128];
    snprintf(key, sizeof key, "x-%ld", i);
    snprintf(task, sizeof task, "{\"op\": \"random\", \"args\": [%ld], \"kwargs\": {\"seed\": %ld}}", size, i);
    CHECK(quiver_graph_add_json(graph, key, task), "graph_add_json");
    sums[i] = malloc(32);
    snprintf(sums[i], 32, "sum-%ld", i);
    const char *input = key;
    CHECK(quiver_graph_add_task(graph, sums[i], "sum", &input, 1, false), "graph_add_task");
  }
  CHECK(quiver_graph_add_task(graph, "total", "sum", (const char *const *)sums, (size_t)arrays, true),
        "graph_add_task");
  const char *total_key = "total";
  CHECK(quiver_submit(client, graph, &total_key, 1), "submit");
  double total = 0;
  CHECK(quiver_fetch_f64(client, "total", &total), "fetch total");
  double n = (double)arrays * (double)size;
  double sigma = sqrt(n / 12.0);
  printf("total = %.3f (expected %.1f +- %.1f)\n", total, n / 2, 6 * sigma);
  if (fabs(total - n / 2) > 6 * sigma) {
    fprintf(stderr, "seed: total is off by more than 6 sigma\n");
    rc = 1;
    goto done;
  }
  CHECK(quiver_release(client, &total_key, 1), "release");

  /* Data in: a C-owned array, scattered without a copy, then a graph over it. */
  const int64_t len = 1000;
  values = malloc(sizeof(double) * (size_t)len);
  for (int64_t i = 0; i < len; i++) values[i] = (double)i;
  const void **buffers = malloc(2 * sizeof(void *));
  buffers[0] = NULL;
  buffers[1] = values;
  struct ArrowArray array = {.length = len, .null_count = 0, .offset = 0, .n_buffers = 2,
                             .n_children = 0, .buffers = buffers, .children = NULL,
                             .dictionary = NULL, .release = release_doubles, .private_data = NULL};
  struct ArrowSchema schema = {.format = "g", .name = "value", .metadata = NULL,
                               .flags = ARROW_FLAG_NULLABLE, .n_children = 0, .children = NULL,
                               .dictionary = NULL, .release = release_schema, .private_data = NULL};
  CHECK(quiver_scatter(client, "c-data", &array, &schema), "scatter");
  schema.release(&schema);
  if (array.release != NULL) {
    fprintf(stderr, "seed: scatter did not take the array\n");
    rc = 1;
    goto done;
  }
  quiver_graph_free(graph);
  graph = NULL;
  CHECK(quiver_graph_from_json("{\"doubled\": {\"op\": \"mul\", \"args\": [{\"key\": \"c-data\"}, 2]},"
                               " \"c-sum\": {\"op\": \"sum\", \"args\": [{\"key\": \"c-data\"}]}}",
                               &graph),
        "graph_from_json");
  const char *outputs[] = {"doubled", "c-sum"};
  CHECK(quiver_submit(client, graph, outputs, 2), "submit");
  double c_sum = 0;
  CHECK(quiver_fetch_f64(client, "c-sum", &c_sum), "fetch c-sum");
  printf("sum of the C array = %.1f (expected %.1f)\n", c_sum, len * (len - 1) / 2.0);
  if (c_sum != len * (len - 1) / 2.0) rc = 1;

  /* Data out: chunks as Arrow C Data Interface structs (a struct array, one child per column). */
  struct ArrowArray out;
  struct ArrowSchema out_schema;
  CHECK(quiver_fetch(client, "doubled", &out, &out_schema), "fetch doubled");
  const double *doubled = out.children[0]->buffers[1];
  printf("doubled: %lld rows, format %s, last = %.1f\n", (long long)out.length,
         out_schema.children[0]->format, doubled[len - 1]);
  if (out.length != len || strcmp(out_schema.children[0]->format, "g") || doubled[len - 1] != 2.0 * (len - 1)) rc = 1;
  out.release(&out);
  out_schema.release(&out_schema);

  CHECK(quiver_fetch(client, "c-data", &out, &out_schema), "fetch c-data");
  int same = out.children[0]->buffers[1] == (const void *)values;
  printf("c-data fetched back from the %s cluster: %s buffer\n", scheduler ? "remote" : "embedded",
         same ? "the same" : "a copied");
  if (!scheduler && !same) {
    fprintf(stderr, "seed: the embedded cluster copied the scattered buffer\n");
    rc = 1;
  }
  out.release(&out);
  out_schema.release(&out_schema);

  /* Errors come back as a status and a message. */
  QuiverStatus st = quiver_fetch_f64(client, "no-such-key", &c_sum);
  printf("fetching an unknown key: status %d, \"%s\"\n", (int)st, quiver_last_error());
  if (st != QUIVER_NOT_FOUND) rc = 1;

  const char *scattered[] = {"c-data", "doubled", "c-sum"};
  CHECK(quiver_release(client, scattered, 3), "release");

done:
  quiver_graph_free(graph);
  quiver_client_free(client);
  for (long i = 0; i < arrays; i++) free(sums[i]);
  free(sums);
  if (rc == 0 && values && released != 1) {
    fprintf(stderr, "seed: the scattered array was released %d times, expected once\n", released);
    rc = 1;
  }
  printf(rc == 0 ? "ok\n" : "FAILED\n");
  return rc;
}
