/**
 * Where a process stands in an SPMD launch (`srun ferry run`, `mpirun ferry
 * run`): its rank and the number of ranks, from the launcher's environment.
 */
export interface RankInfo {
  rank: number;
  size: number;
  /** Which launcher set it: 'slurm', 'openmpi', 'pmi', or 'none'. */
  source: 'slurm' | 'openmpi' | 'pmi' | 'none';
  /** An id shared by all ranks of this launch and no other (for the rendezvous). */
  launchId: string | undefined;
}

export function rankFromEnv(env: NodeJS.ProcessEnv = process.env): RankInfo {
  const num = (v: string | undefined) => (v !== undefined && /^\d+$/.test(v) ? Number(v) : undefined);
  const slurmRank = num(env.SLURM_PROCID);
  const slurmSize = num(env.SLURM_NTASKS) ?? num(env.SLURM_NPROCS);
  if (slurmRank !== undefined && slurmSize !== undefined) {
    return { rank: slurmRank, size: slurmSize, source: 'slurm', launchId: env.SLURM_JOB_ID ? `slurm-${env.SLURM_JOB_ID}.${env.SLURM_STEP_ID ?? '0'}` : undefined };
  }
  const ompiRank = num(env.OMPI_COMM_WORLD_RANK);
  const ompiSize = num(env.OMPI_COMM_WORLD_SIZE);
  if (ompiRank !== undefined && ompiSize !== undefined) {
    const id = env.PMIX_NAMESPACE ?? env.OMPI_MCA_ess_base_jobid ?? env.OMPI_MCA_orte_ess_jobid;
    return { rank: ompiRank, size: ompiSize, source: 'openmpi', launchId: id ? `ompi-${id}` : undefined };
  }
  const pmiRank = num(env.PMI_RANK) ?? num(env.PMIX_RANK);
  const pmiSize = num(env.PMI_SIZE) ?? num(env.PMIX_SIZE);
  if (pmiRank !== undefined && pmiSize !== undefined) {
    const id = env.PMI_KVSNAME ?? env.PMIX_NAMESPACE;
    return { rank: pmiRank, size: pmiSize, source: 'pmi', launchId: id ? `pmi-${id}` : undefined };
  }
  return { rank: 0, size: 1, source: 'none', launchId: undefined };
}
