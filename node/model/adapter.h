/* adapter — LoRA adapters for the model engine: the shapes of a model
 * config as common/lora sees them (adp_arch), and the binding of an adapter
 * set to a model (model_lora) with the buffers the backward pass needs.
 *
 * The spec, the canonical tensor names, the layout and the v0 initialiser
 * are common/lora's (lora_spec, lora_layout, lora_init): a node and the
 * coordinator build the same layout and draw the same v0 for the same seed
 * because they run the same code. Target t of common/lora is projection t
 * of model_lora (MODEL_LORA_NT == LORA_NTARGETS).
 *
 * Pure functions of their arguments apart from allocation; a binding is
 * used by one thread at a time. */
#ifndef FL_ADAPTER_H
#define FL_ADAPTER_H
#include "lora.h"
#include "model.h"
#include "tensor.h"

#include <stddef.h>
#include <stdint.h>

/* The LoRA shapes of config c (lora_arch of common/lora.h: in/out of every
 * projection, head counts); FL_EINVAL when c fails model_config_check. */
int adp_arch(const model_config *c, lora_arch *out);

/* common/lora's layout, v0, layout check and spec-from-tensors for the
 * shapes of config c (v0 drawn with init_seed = seed). FL_EINVAL for a bad
 * config or spec; FL_EMISMATCH with the tensor at fault in err. */
int adp_layout(const model_config *c, const lora_spec *s, tset **out);
int adp_init(const model_config *c, const lora_spec *s, uint64_t seed, tset **out);
int adp_check(const model_config *c, const lora_spec *s, const tset *ad, char *err, size_t errlen);
int adp_spec_from_tset(const model_config *c, const tset *ad, lora_spec *s, char *err,
                       size_t errlen);

/* Data pointers of the lora_a (is_b 0) or lora_b tensors of set ts, indexed
 * l * LORA_NTARGETS + t, NULL where the set has none. out holds
 * n_layers * LORA_NTARGETS entries. */
void adp_ptrs(const model_config *c, const tset *ts, int is_b, float **out);

/* A model_lora over the tensors of ad (which must pass adp_check and
 * outlive the binding). max_rows > 0 also allocates the u buffers
 * ([max_rows, r] per adapted projection) that the backward pass needs. */
typedef struct adp_binding adp_binding;
int adp_bind(const model_config *c, const lora_spec *s, const tset *ad, int max_rows,
             adp_binding **out);
void adp_binding_free(adp_binding *b);
const model_lora *adp_binding_lora(const adp_binding *b);

#endif
