/* Preloaded into the ranks of the mpi tests in sanitizer builds only: keeps
 * every shared object loaded (dlclose does nothing), so that LeakSanitizer
 * can still name the Open MPI component a leak came from when it reports at
 * exit; MPI_Finalize unloads the components first, which leaves their frames
 * as "<unknown module>" that no suppression can match. */
int dlclose(void *handle);

int dlclose(void *handle)
{
    (void)handle;
    return 0;
}
