/* bench/tools/interleave.c: A/B start latency with runs interleaved one by one. */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>
extern char **environ;
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e3+t.tv_nsec/1e6;}
static int cmp(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
/* usage: interleave N -- cmdA... -- cmdB... [-- cmdC...]
 * Runs the commands one after another, N rounds, each in a random order (seeded), and prints
 * each one's median, p25 and p75 wall time (spawn to reap; stdout/stderr to /dev/null).
 * Why: on a shared VM, blocks of runs of one command (hyperfine) drift by +-0.2 ms between
 * blocks, enough to flip an A/B verdict; runs interleaved one by one share the drift.
 * Why random: a run pays for the teardown its predecessor left to the kernel (namespaces, RCU,
 * writeback). With a fixed pattern (A,B,C then C,B,A) B alone followed bwrap half the time and
 * came out ~0.03 ms faster than A with the same binary in both slots. */
int main(int argc,char**argv){
  int n=atoi(argv[1]); char**cmds[4]; int nc=0;
  for(int i=2;i<argc;i++){ if(!strcmp(argv[i],"--")){ argv[i]=NULL; cmds[nc++]=&argv[i+1]; } }
  double *t[4]; for(int c=0;c<nc;c++) t[c]=malloc(sizeof(double)*n);
  posix_spawn_file_actions_t fa; posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa,1,"/dev/null",O_WRONLY,0);
  posix_spawn_file_actions_addopen(&fa,2,"/dev/null",O_WRONLY,0);
  for(int w=0;w<3;w++) for(int c=0;c<nc;c++){pid_t p; posix_spawn(&p,cmds[c][0],&fa,0,cmds[c],environ); waitpid(p,0,0);}
  srand(1); int ord[4];
  for(int i=0;i<n;i++){ for(int k=0;k<nc;k++) ord[k]=k;
    for(int k=nc-1;k>0;k--){ int j=rand()%(k+1), x=ord[k]; ord[k]=ord[j]; ord[j]=x; }
    for(int k=0;k<nc;k++){ int c=ord[k]; pid_t p; double t0=now();
      if(posix_spawn(&p,cmds[c][0],&fa,0,cmds[c],environ)){perror("spawn");return 1;}
      int st; waitpid(p,&st,0); t[c][i]=now()-t0; } }
  for(int c=0;c<nc;c++){ qsort(t[c],n,sizeof(double),cmp); printf("cmd%d median %.3f ms  p25 %.3f  p75 %.3f\n",c,t[c][n/2],t[c][n/4],t[c][3*n/4]); }
  return 0;
}
