/*
 * allreduce: every rank adds a vector of doubles whose sum over the ranks
 * is known (element i of rank r is r + 1 + i), checks every element of
 * every result, and rank 0 prints the time per call.
 *
 *	allreduce [COUNT [CALLS]]	(defaults 1024 doubles and 200 calls)
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
	int count = argc > 1 ? atoi(argv[1]) : 1024;
	int calls = argc > 2 ? atoi(argv[2]) : 200;
	int rank, size, bad = 0;
	double *in, *out, t0, t;

	MPI_Init(&argc, &argv);
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	if (count < 1 || calls < 1) {
		if (rank == 0)
			fprintf(stderr, "allreduce: COUNT and CALLS must be positive\n");
		MPI_Abort(MPI_COMM_WORLD, 2);
	}
	in = malloc(count * sizeof(*in));
	out = malloc(count * sizeof(*out));
	if (!in || !out)
		MPI_Abort(MPI_COMM_WORLD, 1);
	for (int i = 0; i < count; i++)
		in[i] = rank + 1 + i;

	MPI_Allreduce(in, out, count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
	MPI_Barrier(MPI_COMM_WORLD);
	t0 = MPI_Wtime();
	for (int c = 0; c < calls; c++) {
		MPI_Allreduce(in, out, count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
		/* sum over r of (r + 1 + i): exact in doubles at these sizes */
		for (int i = 0; i < count; i++)
			bad += out[i] != (double)size * (size + 1) / 2 + (double)size * i;
	}
	t = MPI_Wtime() - t0;
	MPI_Allreduce(MPI_IN_PLACE, &bad, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);

	if (rank == 0)
		printf("allreduce: %d ranks, %d doubles, %.2f us per call (%d calls), %s\n",
		       size, count, t / calls * 1e6, calls, bad ? "WRONG SUMS" : "sums right");
	free(in);
	free(out);
	MPI_Finalize();
	return bad ? 1 : 0;
}
