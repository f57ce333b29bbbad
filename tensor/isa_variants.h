/* Internal to tensor/, included (several times) where a file instantiates
 * its f32 kernels: CR_ISA_IMPL names the _impl.h, which is included with SFX
 * f32 and an empty TGT (the baseline), then, where CR_ISA_VARIANTS (isa.h),
 * with SFX f32_avx2 / f32_avx512 and TGT the matching target attribute.
 * CR_F32_CALL picks among them. No include guard, on purpose. */
#define SFX f32
#define TGT
#include CR_ISA_IMPL
#undef SFX
#undef TGT
#ifdef CR_ISA_VARIANTS
#define SFX f32_avx2
#define TGT __attribute__((target("avx2")))
#include CR_ISA_IMPL
#undef SFX
#undef TGT
#define SFX f32_avx512
#define TGT __attribute__((target("avx512f")))
#include CR_ISA_IMPL
#undef SFX
#undef TGT
#endif
