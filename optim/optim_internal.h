/* The optimizer's layout, shared by optim/optimizers.c (the update rules) and
 * optim/state.c (checkpoints of the state). Not a public header. */
#ifndef CAROUSEL_OPTIM_INTERNAL_H
#define CAROUSEL_OPTIM_INTERNAL_H

#include "optim.h"

/* State slots per parameter; which ones exist depends on the kind and config.
 * Their names are PyTorch's state keys. */
enum {
    CR_SLOT_MOMENTUM_BUFFER, /* SGD (momentum != 0), RMSprop (momentum > 0) */
    CR_SLOT_EXP_AVG,         /* Adam(W) first moment */
    CR_SLOT_EXP_AVG_SQ,      /* Adam(W) second moment */
    CR_SLOT_MAX_EXP_AVG_SQ,  /* Adam(W) with amsgrad */
    CR_SLOT_SQUARE_AVG,      /* RMSprop */
    CR_SLOT_GRAD_AVG,        /* RMSprop centered */
    CR_N_SLOTS
};

struct cr_optim {
    cr_optim_kind kind;
    cr_params *ps;
    size_t n;          /* parameters at init */
    cr_tensor **value; /* [n] the parameter tensors at init (detects a changed set) */
    cr_sgd_config sgd; /* the config of `kind`; the others stay zero */
    cr_adam_config adam;
    cr_rmsprop_config rms;
    int64_t n_steps;  /* cr_optim_step calls */
    int64_t *step;    /* [n] updates each parameter received */
    cr_tensor **slot; /* [n * CR_N_SLOTS] persistent state, NULL where unused */
};

extern const char *const cr_optim_slot_names[CR_N_SLOTS];

/* Does an optimizer of this kind and config keep slot s? */
bool cr_optim_uses_slot(const cr_optim *o, int s);
/* Allocate (zero-filled) every slot the current config uses and lacks. */
void cr_optim_alloc_slots(cr_optim *o);

/* Misuse unless o->ps still holds exactly the tensors seen at init. */
void cr_optim_check_set(const cr_optim *o, const char *op);

/* Are these hyper-parameters valid for kind (only its config is read)? If not,
 * says why in msg. */
bool cr_optim_config_ok(cr_optim_kind kind, const cr_sgd_config *sgd, const cr_adam_config *adam,
                        const cr_rmsprop_config *rms, char *msg, size_t len);

/* Write "msg" to err (when not NULL) and return st. */
cr_status cr_optim_fail(char *err, size_t errlen, cr_status st, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* cr_st_read with a status: CR_EIO when the file cannot be opened or is not a
 * regular file, CR_ENOMEM, else CR_EFORMAT for a malformed file. */
cr_status cr_optim_st_read(const char *path, cr_st_file **f, char *err, size_t errlen);

/* A vocabulary as two safetensors entries and metadata pairs (optim/data.c),
 * for cr_vocab_save and cr_checkpoint_save. kv points into val: do not copy
 * a blob after making it. */
#define CR_VOCAB_N_META 4
typedef struct cr_vocab_blob {
    int32_t *data; /* token bytes (one per element) then offsets; malloc'd */
    cr_st_entry e[2];
    char val[CR_VOCAB_N_META][24];
    const char *kv[2 * CR_VOCAB_N_META];
} cr_vocab_blob;
cr_status cr_vocab_blob_make(const cr_vocab *v, cr_vocab_blob *b, char *err, size_t errlen);
void cr_vocab_blob_free(cr_vocab_blob *b);
/* Does f hold a vocabulary (its tensors or its metadata)? */
bool cr_vocab_in_file(const cr_st_file *f);
/* Validate and build the vocabulary stored in f. */
cr_status cr_vocab_from_file(const cr_st_file *f, cr_vocab **out, char *err, size_t errlen);

#endif
