/* placeholder: being written */
#include "spool.h"
