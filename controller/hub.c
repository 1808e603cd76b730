/* placeholder: being written */
#include "hub.h"
