/*
 * pingpong: ranks 0 and 1 bounce a message. Prints the one-way latency of
 * an 8-byte message (half the median of many timed round trips) and the
 * bandwidth of 1 MiB messages (bytes moved both ways over the time of the
 * round trips, rank 0's clock); every 1 MiB message is checked by both
 * ranks, outside the timed round trip.
 *
 *	pingpong [ROUNDS_8B [ROUNDS_1M]]	(defaults 1000 and 50)
 */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define BIG (1 << 20)

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* bounce sends buf to the peer and takes it back (rank 0), or the other
 * way round (rank 1). */
static void bounce(int rank, void *buf, int len)
{
	int peer = 1 - rank;

	if (rank == 0) {
		MPI_Send(buf, len, MPI_BYTE, peer, 0, MPI_COMM_WORLD);
		MPI_Recv(buf, len, MPI_BYTE, peer, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
	} else {
		MPI_Recv(buf, len, MPI_BYTE, peer, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
		MPI_Send(buf, len, MPI_BYTE, peer, 0, MPI_COMM_WORLD);
	}
}

/* fill writes round r's pattern into buf; check says whether buf holds it. */
static void fill(uint32_t *buf, int r)
{
	for (int i = 0; i < BIG / 4; i++)
		buf[i] = (uint32_t)i * 2654435761u + (uint32_t)r;
}

static int check(const uint32_t *buf, int r)
{
	for (int i = 0; i < BIG / 4; i++)
		if (buf[i] != (uint32_t)i * 2654435761u + (uint32_t)r)
			return 0;
	return 1;
}

int main(int argc, char **argv)
{
	int rounds = argc > 1 ? atoi(argv[1]) : 1000;
	int big_rounds = argc > 2 ? atoi(argv[2]) : 50;
	int rank, size, bad = 0;
	char small[8] = "pingpong";
	uint32_t *buf;
	double *rtt, t0, t;

	MPI_Init(&argc, &argv);
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	if (size != 2 || rounds < 1 || big_rounds < 1) {
		if (rank == 0)
			fprintf(stderr, "pingpong: needs 2 ranks (have %d) and positive round counts\n", size);
		MPI_Abort(MPI_COMM_WORLD, 2);
	}
	rtt = malloc(rounds * sizeof(*rtt));
	buf = malloc(BIG);
	if (!rtt || !buf)
		MPI_Abort(MPI_COMM_WORLD, 1);

	for (int i = 0; i < 10; i++)	/* connections, caches */
		bounce(rank, small, sizeof(small));
	for (int i = 0; i < rounds; i++) {
		t0 = MPI_Wtime();
		bounce(rank, small, sizeof(small));
		rtt[i] = MPI_Wtime() - t0;
	}
	qsort(rtt, rounds, sizeof(*rtt), cmp);

	bounce(rank, buf, BIG);		/* warm-up */
	MPI_Barrier(MPI_COMM_WORLD);
	t = 0;
	for (int r = 0; r < big_rounds; r++) {
		if (rank == 0)
			fill(buf, r);
		t0 = MPI_Wtime();
		bounce(rank, buf, BIG);
		t += MPI_Wtime() - t0;	/* rank 0's: the round trip */
		bad += !check(buf, r);	/* rank 1's: what it sent back */
	}
	MPI_Allreduce(MPI_IN_PLACE, &bad, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);

	if (rank == 0) {
		printf("pingpong: latency 8 B %.2f us one way (median of %d round trips; min %.2f, max %.2f us round trip)\n",
		       rtt[rounds / 2] / 2 * 1e6, rounds, rtt[0] * 1e6, rtt[rounds - 1] * 1e6);
		printf("pingpong: bandwidth 1 MiB %.2f MB/s (%d round trips, %d bad messages)\n",
		       2.0 * BIG * big_rounds / t / 1e6, big_rounds, bad);
	}
	free(buf);
	free(rtt);
	MPI_Finalize();
	return bad ? 1 : 0;
}
