#define _GNU_SOURCE
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <sched.h>
#include <stdatomic.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static _Alignas(64) atomic_int line;
int main(int argc,char**argv){
  size_t bytes=(size_t)256<<20; int passes=argc>1?atoi(argv[1]):400;
  float*b=aligned_alloc(2<<20,bytes); size_t n=bytes/4;
  for(size_t i=0;i<n;i++)b[i]=i&7;
  double t0=now(); float sink=0;
  #pragma omp parallel num_threads(2)
  { cpu_set_t s; CPU_ZERO(&s); CPU_SET(omp_get_thread_num(),&s); sched_setaffinity(0,sizeof s,&s); }
  for(int p=0;p<passes;p++){
    double s=now();
    #pragma omp parallel num_threads(2) reduction(+:sink)
    { int t=omp_get_thread_num(); size_t c=n/2; const float*q=b+t*c; __m512 a[8]; for(int l=0;l<8;l++)a[l]=_mm512_setzero_ps();
      for(size_t i=0;i+128<=c;i+=128){ for(int l=0;l<8;l++){_mm_prefetch((const char*)(q+i+512+l*16),_MM_HINT_T0); a[l]=_mm512_add_ps(a[l],_mm512_load_ps(q+i+l*16));}}
      for(int l=0;l<8;l++) sink+=_mm512_reduce_add_ps(a[l]); }
    double e=now();
    double rs=0;
    atomic_store(&line,0);
    #pragma omp parallel num_threads(2)
    { int t=omp_get_thread_num(); double st=now();
      for(int i=0;i<1000;i++){ if(t==0){atomic_store(&line,2*i+1); while(atomic_load(&line)!=2*i+2);} else {while(atomic_load(&line)!=2*i+1); atomic_store(&line,2*i+2);} }
      if(t==0) rs=(now()-st)/1000*1e9; }
    printf("%.2f %.0f %.0f\n",e-t0,bytes/(e-s)/1e9,rs);
  }
  fprintf(stderr,"%f\n",sink); return 0;}
