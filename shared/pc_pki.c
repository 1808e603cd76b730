/* placeholder: being written */
#include "pc_pki.h"
